"""Lightning training: the shared streaming loop, next-token pretraining, multitask finetuning, predictions
and the stage runners (:mod:`ehrfm.train.stage`; their configs live in :mod:`ehrfm.config.train`)."""
