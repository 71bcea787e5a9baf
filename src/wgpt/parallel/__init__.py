"""Model parallelism free of the trainer: blocks, activation checkpointing, compile per block, FSDP2 sharding."""
