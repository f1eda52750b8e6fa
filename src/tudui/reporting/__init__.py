"""What a person sees: console progress and tables (TensorBoard and pictures live beside)."""
