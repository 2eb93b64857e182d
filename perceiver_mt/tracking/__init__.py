"""Run tracking: the job's logger (W&B by default, CSV as fallback), its callbacks, and task media.

    logger = build_logger(config, ckpt_path)      # perceiver_mt.tracking.loggers
    callbacks = build_callbacks(config)           # perceiver_mt.tracking.callbacks

Task plugins only need `perceiver_mt.tracking.media`, which imports nothing but numpy.
"""
