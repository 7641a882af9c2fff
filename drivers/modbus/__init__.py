"""Modbus source (pymodbus)."""
