"""Data preparation: ShapeNet meshes, binvox voxels and 3D-R2N2 renderings (or generated shapes)
to HDF5 files in IM-NET's layout. Run `python -m data_prep --help`."""
