"""The names of the files and folders a run writes under its output_dir, defined once.

Readers (evaluation, publishing, the model card, resume) find a run's pieces by these names, so they live in a
module that imports nothing.
"""

RESOLVED_CONFIG_FILE = "resolved_config.yaml"  # the arguments and derived settings (hf_pretrain.resolve)
TOKENIZER_SUBDIR = "tokenizer"  # a tokenizer trained on the corpus (also inside prepared datasets)
STAGING_DIR = ".hub_staging"  # hard-linked checkpoint copies waiting for their Hub push
REVISIONS_FILE = "revisions.txt"  # the checkpoint branches published to the Hub
LOSS_CURVE_FILE = "loss_curve.png"  # the model card's loss curve
