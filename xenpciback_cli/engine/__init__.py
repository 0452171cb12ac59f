"""Operations on the host model: seizing and releasing devices, the journal, recovery, persistence.

Plain Python: no click, no rich. Each operation returns a result object the CLI renders.
"""
