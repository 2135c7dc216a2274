"""Converters from other checkpoint layouts into atoken ``from_pretrained`` directories."""
