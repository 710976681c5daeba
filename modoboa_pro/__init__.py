"""modoboa_pro: professional extensions for the Modoboa mail platform."""

__version__ = "0.1.0"
