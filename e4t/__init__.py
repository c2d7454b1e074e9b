"""E4T: encoder-based domain tuning for fast personalization of text-to-image models (Gal et al. 2023)."""

from e4t.base import Base, load_base
from e4t.concept import Concept
from e4t.generate import generate
from e4t.pack import DomainPack, load_pack
from e4t.prompts import find_concept_ids
from e4t.tuner import personalize

__all__ = ["Base", "Concept", "DomainPack", "find_concept_ids", "generate", "load_base", "load_pack", "personalize"]
