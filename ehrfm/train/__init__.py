"""Lightning training: the shared streaming loop, next-token pretraining, configs."""
