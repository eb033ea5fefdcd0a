import numpy as np
import pytest

from aam.data.transforms import TargetTransform
from aam.errors import AamUserError

KINDS = ["none", "minmax", "zscore", "log-minmax", "log-zscore"]


@pytest.mark.parametrize("kind", KINDS)
def test_inverse_undoes_forward_and_survives_a_round_trip_through_dict(kind):
    rng = np.random.default_rng(0)
    train = np.column_stack([rng.uniform(9, 112, 50), rng.uniform(3.8, 12.3, 50)])
    t = TargetTransform.fit(kind, ["age", "ph"], train)
    again = TargetTransform.from_dict(t.to_dict())
    other = rng.uniform(0, 200, (7, 2))
    np.testing.assert_allclose(again.inverse(again.forward(other)), other, rtol=1e-10)


def test_zscore_is_fitted_on_the_values_given_and_ignores_missing():
    train = np.array([[1.0], [3.0], [np.nan], [5.0]])
    t = TargetTransform.fit("zscore", ["y"], train)
    z = t.forward(np.array([[1.0], [3.0], [5.0]]))
    assert z.mean() == pytest.approx(0.0)
    assert z.std() == pytest.approx(1.0)
    assert np.isnan(t.forward(np.array([[np.nan]]))).all()


def test_minmax_maps_train_range_to_unit_interval():
    t = TargetTransform.fit("minmax", ["y"], np.array([[10.0], [20.0], [30.0]]))
    np.testing.assert_allclose(t.forward(np.array([[10.0], [30.0]])).ravel(), [0.0, 1.0])


def test_constant_target_does_not_divide_by_zero():
    t = TargetTransform.fit("zscore", ["y"], np.full((4, 1), 7.0))
    assert np.isfinite(t.forward(np.array([[7.0], [8.0]]))).all()


def test_log_transform_refuses_values_at_or_below_minus_one():
    with pytest.raises(AamUserError, match="log1p"):
        TargetTransform.fit("log-zscore", ["y"], np.array([[-1.0], [2.0]]))


def test_target_without_training_values_is_an_error():
    with pytest.raises(AamUserError, match="no value in the training split"):
        TargetTransform.fit("zscore", ["y"], np.array([[np.nan], [np.nan]]))
