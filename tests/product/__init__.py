"""Tests of The product as users get it: the package, its layout, what older versions wrote, robustness."""
