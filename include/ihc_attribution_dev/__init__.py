"""Development and test tools of the IHC attribution package: the local IHC-compatible server
and the demo-data generator. Production code never imports this package."""
