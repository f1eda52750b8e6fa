"""What a person sees: TensorBoard event files, PNG pictures, result tables, `tudui board` and `tudui info`."""
