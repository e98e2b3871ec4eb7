"""catcache: a category-aware semantic and functional response cache for LLM serving."""

__version__ = "0.1.0"
