"""Study recipes: ``studies/*.toml`` files that ``brainalign run`` executes end to end
(embed or pull -> ingest -> fit -> partition -> report), with a loader per dataset layout."""

from .base import DATASETS, RecipeError, ReportPart, StudyDataset, dataset_class
from .recipe import DataSpec, ModelSpec, PartitionSpec, Recipe, load_recipe, parse_recipe

__all__ = [
    "DATASETS",
    "DataSpec",
    "ModelSpec",
    "PartitionSpec",
    "Recipe",
    "RecipeError",
    "ReportPart",
    "StudyDataset",
    "dataset_class",
    "load_recipe",
    "parse_recipe",
]
