"""quickstart_app: a Flower / PyTorch app in the shape of Flower's quickstart template.

The tests make flwr-tempered's one-line change on it (a robust strategy in place of
``FedAvg``, ``malicious_clientapp`` around the ClientApp) and run it in-process.
"""
