"""Faces of atoken for other ecosystems.

`atoken.integrations.diffusers`: `AutoencoderAToken`, a dense diffusers-style autoencoder
(``ModelMixin`` / ``ConfigMixin``) over an atoken tokenizer. Each integration imports its
ecosystem's package only when its module is imported.
"""
