"""Prepare stage: subject splits, vocabulary and value bins fitted on the train split."""
