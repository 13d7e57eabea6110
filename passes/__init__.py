"""qcc.passes"""
