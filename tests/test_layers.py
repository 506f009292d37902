"""Shared layers: the fused expert bank equals separate expert MLPs with the same weights."""
import pytest
import torch

from mtlframe.layers import MLP, ExpertBank


@pytest.mark.parametrize("hidden", [[5], [5, 3], [4, 6, 2]])
def test_expert_bank_equals_separate_mlps(hidden):
    torch.manual_seed(0)
    bank = ExpertBank(3, 7, hidden)
    x = torch.randn(9, 7)
    out = bank(x)
    assert out.shape == (9, 3, hidden[-1])
    h1 = hidden[0]
    for e in range(3):
        mlp = MLP(7, hidden)
        linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            linears[0].weight.copy_(bank.first.weight[e * h1:(e + 1) * h1])
            linears[0].bias.copy_(bank.first.bias[e * h1:(e + 1) * h1])
            for i, lin in enumerate(linears[1:]):
                lin.weight.copy_(bank.weights[i][e].T)
                lin.bias.copy_(bank.biases[i][e, 0])
        torch.testing.assert_close(out[:, e], mlp(x))
        torch.testing.assert_close(bank[e](x), mlp(x))
    with pytest.raises(IndexError):
        bank[3]
