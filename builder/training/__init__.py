"""Training plumbing around Lightning.

    module      the LightningModule (loss, AdamW, warmup + cosine, clipping)
    callbacks   text samples, the attention probe, atomic checkpoint writes, saving on interrupt
    loggers     wandb (offline unless logged in), csv and tensorboard, from the ``logger`` group
    launch      multirun x DDP: each job's processes run that job only
    throughput  tokens/s and MFU
"""
