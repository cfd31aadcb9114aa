"""DF-Middleware: keeps GoHighLevel, Aloware and Verity in step."""

__version__ = "0.1.0"
