# $app_name

A Flower app in the layout of Flower's own templates (`pyproject.toml`, `task.py`,
`client_app.py`, `server_app.py`), written by `flwr-tempered new`:

- data: MNIST-5k (4,000 training and 1,000 test images that ship with flwr-tempered,
  nothing is downloaded), split IID over the SuperNodes;
- strategy: $strategy_line;
- attack: $attack_summary.

Run it (offline, $supernodes SuperNodes on Flower's simulation engine):

```bash
FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run . --stream --federation-config "num-supernodes=$supernodes"
```

The ServerApp scores the global model on the 1,000 test images after every round and saves
the final model to `final_model.pt` in the folder `flwr run` is started in (the
`final-model` setting in `pyproject.toml`). Without `--federation-config`, Flower starts 2
SuperNodes: too few for the attack (20 % of 2 rounds to none) and for strategies with a
Byzantine budget, which then stop before round 1 and say so.
