"""How a label that is not known is written: semi-supervised data and objectives agree on it."""

UNLABELLED = -1  # the label of a training image whose label `--labels N` hides
