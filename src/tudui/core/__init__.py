"""The bottom layer: what every other layer may use, importing nothing of tudui above it.

errors (TuduiError), config (TrainConfig), files (the one atomic writer, run directories, versions),
checkpoint (checkpoint and weights I/O), device (device choice, torchrun's place, seeding, precision),
console (progress bars and text tables), trust (the model files this user trained with: code a checkpoint may name).
"""
__version__ = "0.1.0"
