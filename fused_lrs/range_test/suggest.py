"""placeholder"""
import numpy as np

def smooth_curve(raw):
    return list(raw)

def suggest(lrs, losses):
    if len(losses) < 3: return float("nan")
    l = np.array(losses); return float(lrs[int(np.gradient(l).argmin())])
