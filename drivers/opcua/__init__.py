"""OPC UA source (asyncua)."""
