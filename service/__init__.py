"""vae-lab's model server: a FastAPI app over the run directories that `vae train` writes."""
