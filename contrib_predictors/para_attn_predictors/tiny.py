"""placeholder until the tiny predictor lands"""
