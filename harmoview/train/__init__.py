"""PVC training: recipes, model inputs, view dropout, the cache, trainable parts, optimiser/EMA,
checkpoints, FSDP2, metrics log, previews and the trainer loop."""
