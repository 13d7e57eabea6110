"""qcc.targets"""
