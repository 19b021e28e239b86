"""Wang et al. 2019 (Nature Machine Intelligence 1, 434): in-situ trained CNN and ConvLSTM.

`data`: MNIST reduced to 8x8 and the MNIST-sequence generator; `nets`: the float64 software
twins of the 1,015-weight CNN and the 850-weight ConvLSTM, written as weight matrices applied
to im2col patches; `optim`: RMSprop as in the authors' code; `train`: software training.
"""
