"""The GraphLab Create example: add pairs of numbers, one task per pair, then sum them."""


def add(x, y):
    return x + y


def add_combiner(**kwargs):
    return sum(kwargs.values())


if __name__ == "__main__":
    import deploy

    params = [{"x": 20, "y": 20}, {"x": None, "y": 10}, {"x": 5, "y": 5}]
    job = deploy.map_job.create(add, params)
    job.wait()
    print(job.get_map_results())
    print(job)
