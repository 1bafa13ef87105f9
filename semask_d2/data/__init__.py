"""Datasets and dataset mappers. Importing it registers the SeMask datasets (lazily)."""
