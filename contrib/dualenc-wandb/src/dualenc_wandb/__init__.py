"""dualenc-wandb: a Weights & Biases tracker for dualenc, registered as ``wandb``.

pip install -e contrib/dualenc-wandb
dualenc train --config configs/quickstart.yaml --plugin trackers=aim,wandb
"""
