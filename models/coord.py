"""Crop offsets from the net itself: Caffe's coord_map, extended through Concat.

`caffe.coord_map` relates the coordinates of two tops by walking back from both to a top
they share, composing each layer's map on the way (scale and shift: a Convolution of stride
s, kernel k and pad p maps input x to output (x + p - (k - 1) / 2) / s). It stops at every
layer it has no map for, and Concat is one of them, so no crop can be computed across an
inception module. A Concat along channels (or the batch) leaves every input's spatial grid
as it is: its map is the identity, provided its inputs lie on one grid. Caffe's walk
assumes that whatever path it takes agrees; here it is checked.

Every top is given the maps from all of its ancestors (the tops it is computed from
through mappable layers). Where a layer joins several bottoms (Concat, Eltwise), each
ancestor they share must map onto the output in the same way through every bottom, or the
net is rejected; `crop` then requires the tops it relates to agree on every ancestor they
share. For nets without Concat, the offsets are those of `caffe.coord_map.crop`.
"""
import numpy as np
from caffe import coord_map as caffe_coord_map
from caffe import layers as L

IDENTITY = (None, 1, 0)
# Concatenating along these axes (batch, channels) keeps each input's spatial grid.
GRID_PRESERVING_CONCAT_AXES = (0, 1)


class CoordMapError(ValueError):
    """Two tops have no well-defined coordinate map between them."""


def layer_map(fn):
    """The (axis, scale, shift) map of one layer from its input to its output coordinates.

    Caffe's maps, and the identity for a Concat along the batch or channel axis; raises
    caffe.coord_map.UndefinedMapException where no map exists (the walk stops there).
    """
    if fn.type_name == 'Concat':
        params = fn.params.get('concat_param', fn.params)
        axis = params.get('axis', params.get('concat_dim', 1))
        if axis not in GRID_PRESERVING_CONCAT_AXES:
            raise caffe_coord_map.UndefinedMapException
        return IDENTITY
    return caffe_coord_map.coord_map(fn)


def mapped_bottoms(fn):
    """The bottoms whose coordinates a layer's output keeps: all but a Crop's reference."""
    return fn.inputs[:1] if fn.type_name == 'Crop' else fn.inputs


def same_map(first, second):
    """Whether two maps agree (an axis of None fits any axis)."""
    (axis1, scale1, shift1), (axis2, scale2, shift2) = first, second
    return ((axis1 is None or axis2 is None or axis1 == axis2)
            and np.allclose(scale1, scale2, rtol=0, atol=1e-9)
            and np.allclose(shift1, shift2, rtol=0, atol=1e-9))


def describe(coord_map):
    axis, scale, shift = coord_map
    return f'scale {np.ravel(scale).tolist()}, shift {np.ravel(shift).tolist()}'


def ancestor_maps(top, memo):
    """{ancestor top: map from the ancestor's coordinates to `top`'s}, `top` included.

    `memo` caches the answer per top for one walk (a net's tops share most ancestors).
    """
    if top in memo:
        return memo[top]
    maps = {top: IDENTITY}
    try:
        step = layer_map(top.fn)
    except caffe_coord_map.UndefinedMapException:
        step = None
    if step is not None:
        joined = {}
        for bottom in mapped_bottoms(top.fn):
            for ancestor, bottom_map in ancestor_maps(bottom, memo).items():
                through = caffe_coord_map.compose(step, bottom_map)
                if ancestor in joined and not same_map(joined[ancestor], through):
                    raise CoordMapError(
                        f'a {top.fn.type_name} layer joins bottoms on different grids: one '
                        f'shared ancestor maps onto it with {describe(joined[ancestor])} '
                        f'through one bottom and {describe(through)} through another')
                joined[ancestor] = through
        maps.update(joined)
    memo[top] = maps
    return maps


def coord_map_from_to(top_from, top_to):
    """The (axis, scale, shift) map from `top_from`'s coordinates to `top_to`'s.

    Like caffe.coord_map.coord_map_from_to, through Concat too, and checked: every
    ancestor the two tops share must give the same map.
    """
    memo = {}
    from_maps = ancestor_maps(top_from, memo)
    to_maps = ancestor_maps(top_to, memo)
    shared = [top for top in to_maps if top in from_maps]
    if not shared:
        raise CoordMapError('the two tops share no ancestor through layers with a '
                            'coordinate map (are they connected by spatial layers?)')
    maps = [caffe_coord_map.compose(to_maps[top], caffe_coord_map.inverse(from_maps[top]))
            for top in shared]
    for other in maps[1:]:
        if not same_map(maps[0], other):
            raise CoordMapError(f'the two tops are related by {describe(maps[0])} through '
                                f'one shared ancestor and {describe(other)} through another')
    return maps[0]


def crop(top_from, top_to):
    """A Crop layer cutting `top_from` to the extent of `top_to`, its offset derived from
    the net (drop-in for caffe.coord_map.crop, which cannot pass a Concat)."""
    coord_map = coord_map_from_to(top_from, top_to)
    axis, scale, shift = coord_map
    if not np.allclose(scale, 1, rtol=0, atol=1e-9):
        raise CoordMapError(f'cannot crop across a change of scale ({describe(coord_map)})')
    shift = np.atleast_1d(shift)
    offset = -np.round(shift)
    if not np.allclose(offset, -shift, rtol=0, atol=1e-9):
        raise CoordMapError(f'cannot crop by a fractional offset {np.ravel(-shift).tolist()}')
    if (offset < 0).any():
        raise CoordMapError(f'cannot crop by a negative offset {np.ravel(offset).tolist()}: '
                            f'the top to crop starts inside the reference top')
    # An all-identity path has no axis; spatial maps start at axis 1 (0 is channels).
    axis = 1 if axis is None else axis
    return L.Crop(top_from, top_to,
                  crop_param=dict(axis=axis + 1, offset=list(offset.astype(int))))
