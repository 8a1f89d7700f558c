"""server-assisted: an ordinary Flower app (FedAvg-style) made robust with flwr-tempered."""
