"""Training pieces: TrainState, the compiled step, optimisers, checkpoints, schedules.

Never imports ``arjax.evaluation`` or ``arjax.experiment``; the host loop that
uses these lives in :mod:`arjax.experiment.train`.
"""
