import torch, sys
from torch import nn
torch.manual_seed(0)
def make(num_classes=4):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, num_classes))
if __name__ == "__main__":
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(4, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (400,), generator=g)
    x = protos[y] + 0.8 * torch.randn(400, 3, 8, 8, generator=g)
    torch.save({"x": x[:300], "y": y[:300]}, "train.pt"); torch.save({"x": x[300:], "y": y[300:]}, "test.pt")
    for i in range(3):
        torch.manual_seed(i); m = make(); opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        for ep in range(30):
            for s in range(0, 300, 50):
                opt.zero_grad(); nn.functional.cross_entropy(m(x[s:s+50]), y[s:s+50]).backward(); opt.step()
        torch.save(m.state_dict(), f"m{i}.pt")
