"""Labels: cleaning and fitting class names to CLIP's prompts, vocabularies, automatic labels."""
