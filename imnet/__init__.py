"""imnet: single-image 3D reconstruction with IM-NET implicit field decoders.

Conventions used everywhere in this package (see README, "Conventions"):
- Object space is the normalised cube [-0.5, 0.5]^3 (axes x, y, z of the source mesh, y up for ShapeNet).
- Voxel grids are numpy arrays indexed [x, y, z]; cell i of an R-grid has centre (i + 0.5) / R - 0.5.
- Occupancy is 1 inside, 0 outside; meshes are the 0.5 level set.
"""

__version__ = "0.1.0"
