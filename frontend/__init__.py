"""qcc.frontend"""
