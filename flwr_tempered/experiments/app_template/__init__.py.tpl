"""$app_name: a Flower / PyTorch app with a robust strategy (flwr-tempered)."""
