"""Models: the tiny base model builder and checkpoint loading."""
