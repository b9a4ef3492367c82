"""The data layer dataset adapters build on: preprocessing (paper Table 3), splits, subject
volumes, NIfTI and DICOM I/O, the HU scaling of the networks."""
