$header
#
# Run it offline on Flower's simulation engine, $supernodes SuperNodes (the strategy's
# settings are chosen for that many; the data ships with flwr-tempered):
#   FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run . --stream --federation-config "num-supernodes=$supernodes"
# Change a setting for one run with --run-config, e.g. --run-config "num-server-rounds=5".

[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "$app_name"
version = "1.0.0"
description = "A Flower / PyTorch app on MNIST-5k with a robust strategy (flwr-tempered)"
license = "Apache-2.0"
dependencies = [
    "flwr[simulation]>=$flwr_version",
    "flwr-tempered",
    "torch>=2.4",
]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "$publisher"

[tool.flwr.app.components]
serverapp = "$package.server_app:app"
clientapp = "$package.client_app:app"

[tool.flwr.app.config]
num-server-rounds = $rounds
# Every SuperNode trains in every round: the strategy's Byzantine budget counts them.
fraction-train = 1.0
local-epochs = 1
batch-size = 32
lr = 0.1
# Where the ServerApp saves the final global model (a relative path is taken from the
# folder `flwr run` is started in).
final-model = "final_model.pt"

# The number of SuperNodes is a federation setting, not an app setting: with Flower 1.41
# it goes on the command line (--federation-config "num-supernodes=$supernodes") or into
# the Flower configuration (`flwr federation simulation-config`), and no longer into a
# [tool.flwr.federations] table here (`flwr run` would move such a table out of this file).
