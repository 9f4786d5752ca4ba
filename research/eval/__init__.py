"""Experiments that answer the research questions (effectiveness, harm, robustness, transfer,
tracing). Each writes a CSV under results/ and can resume without redoing finished cells."""
