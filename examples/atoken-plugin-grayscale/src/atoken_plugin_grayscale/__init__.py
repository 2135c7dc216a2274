"""atoken-plugin-grayscale: a ``grayscale`` modality for atoken, shipped as a separate package.

The package is an example of an atoken plugin. ``plugin.py`` is what the ``atoken`` entry point
names (hook implementations only), ``options.py`` the adapter's options model, ``adapter.py`` the
adapter itself (imported only when the adapter is built). Nothing is imported here, so loading
the plugin stays cheap.
"""
