# Copied from the project's shared AVX2 records (records/avx2-amd-epyc/emulation-probe.py); run the
# same way on every host so that the hashes compare (fixtures/records/*/README.md).
# Usage: python emulation-probe.py MODEL_DIR STEPS   (prints image sha12, randn sha12, sum_abs, ATen capability)
import os, sys, hashlib, torch, numpy as np
torch.set_num_threads(2)
from diffusers import DDIMPipeline
p = DDIMPipeline.from_pretrained(sys.argv[1])
for m in [p.unet]:
    for prm in m.parameters(): prm.data = prm.data.clone()
g = torch.Generator("cpu").manual_seed(0)
img = p(num_inference_steps=int(sys.argv[2]), output_type="np", generator=g, batch_size=2).images
x = torch.randn(3,32,32, generator=torch.Generator().manual_seed(0)).numpy()
print(hashlib.sha256(img.tobytes()).hexdigest()[:12], hashlib.sha256(x.tobytes()).hexdigest()[:12], float(np.abs(img).sum()), torch.backends.cpu.get_cpu_capability())
