"""Machine and MES data sources, one module per protocol behind the Source interface."""
