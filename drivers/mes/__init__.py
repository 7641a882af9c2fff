"""MES source: production, goods movement and quality transactions posted over a local HTTP API
or dropped as files, stored as records in the transaction lane."""
