"""The TensorFlow ops a SavedModel may hold for lstm-onnx to run its serving signature as the reference.

An allowlist, not a denylist: a graph op can read or write files (`ReadFile`, `WriteFile`, `SaveV2`,
`MatchingFiles`, `ImmutableConst`), print (`PrintV2`), call Python (`PyFunc`, `EagerPyFunc`), read datasets
or queues, or talk to other processes (collectives, `_Send`), and new ones appear in every TensorFlow
release. What is listed computes on tensors and variables only: the ops tf.keras 2.x writes for
recurrent models (seen in the SavedModels of `scripts/make_keras2_models.py`) and the common inference
ops of Dense, Conv, normalization and activation layers. The checkpoint ops `SAVER_OPS` are allowed only
in functions that nothing TensorFlow's TF2 loader runs can reach: TensorFlow's own saver, which only the
top-level graph calls (`toolkit.models.keras2.savedmodel.refused_ops` decides by reachability, not by name).
"""

from __future__ import annotations

_CONTROL = """
Const Identity IdentityN NoOp Placeholder PlaceholderWithDefault StopGradient PreventGradient Snapshot
PartitionedCall StatefulPartitionedCall While StatelessWhile If StatelessIf Case StatelessCase
Enter Exit Merge Switch NextIteration LoopCond ControlTrigger Assert CheckNumerics CheckNumericsV2
OptionalFromValue OptionalGetValue OptionalNone OptionalHasValue
VarHandleOp VarIsInitializedOp ReadVariableOp AssignVariableOp AssignAddVariableOp AssignSubVariableOp
ResourceGather ResourceGatherNd DestroyResourceOp DisableCopyOnRead
"""
_TENSORS = """
Shape ShapeN Size Rank Reshape ExpandDims Squeeze Transpose ConjugateTranspose InvertPermutation
ConcatV2 Concat ConcatOffset Pack Unpack Split SplitV Slice StridedSlice StridedSliceGrad TensorScatterUpdate
Gather GatherV2 GatherNd ScatterNd Tile Fill ZerosLike OnesLike Range Pad PadV2 MirrorPad BroadcastTo
BroadcastArgs BroadcastGradientArgs ReverseV2 ReverseSequence Where Select SelectV2 Cast Bitcast
OneHot TopKV2 ArgMax ArgMin Unique Cumsum Cumprod SpaceToBatchND BatchToSpaceND DepthToSpace SpaceToDepth
EmptyTensorList TensorListFromTensor TensorListGetItem TensorListSetItem TensorListReserve TensorListStack
TensorListLength TensorListPopBack TensorListPushBack TensorListElementShape TensorListConcatV2
TensorListSplit TensorListGather TensorListScatterIntoExistingList TensorListResize
"""
_MATH = """
Add AddV2 AddN Sub Mul MulNoNan Div DivNoNan RealDiv FloorDiv FloorMod Mod TruncateDiv Neg Abs Sign
Square Sqrt Rsqrt Exp Expm1 Log Log1p Pow Reciprocal Inv Maximum Minimum ClipByValue Round Rint Floor Ceil
SquaredDifference Erf Erfc Sin Cos Tan Asin Acos Atan Atan2 Sinh Cosh IsNan IsInf IsFinite
Equal NotEqual Less LessEqual Greater GreaterEqual LogicalAnd LogicalOr LogicalNot All Any
Sum Mean Max Min Prod EuclideanNorm MatMul BatchMatMul BatchMatMulV2 BatchMatMulV3 Einsum
Tanh Sigmoid Relu Relu6 Elu Selu LeakyRelu Softplus Softsign Softmax LogSoftmax Gelu
TanhGrad SigmoidGrad ReluGrad Relu6Grad EluGrad SeluGrad LeakyReluGrad SoftplusGrad SoftsignGrad
BiasAdd BiasAddGrad BiasAddV1 Conv2D Conv3D DepthwiseConv2dNative Conv2DBackpropInput MaxPool MaxPoolV2
AvgPool FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3 L2Loss CudnnRNN CudnnRNNV2 CudnnRNNV3
CudnnRNNBackprop CudnnRNNBackpropV2 CudnnRNNBackpropV3 CudnnRNNParamsSize CudnnRNNCanonicalToParams
CudnnRNNCanonicalToParamsV2 CudnnRNNParamsToCanonical CudnnRNNParamsToCanonicalV2
RandomUniform RandomStandardNormal StatelessRandomUniformV2 StatelessRandomNormalV2
StatelessRandomGetKeyCounter StatelessRandomGetKeyCounterAlg StatelessRandomUniformIntV2
"""

ALLOWED_OPS = frozenset((_CONTROL + _TENSORS + _MATH).split())
"""Ops a SavedModel's graph may hold anywhere."""

SAVER_OPS = frozenset("SaveV2 RestoreV2 MergeV2Checkpoints ShardedFilename StringJoin StaticRegexFullMatch".split())
"""Checkpoint ops: allowed only in TensorFlow's own saver functions, which the TF2 loader does not run."""
