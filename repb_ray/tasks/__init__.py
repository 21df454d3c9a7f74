"""Built-in tasks, one file each, through the same Task contract as a user's: fashion_mnist (the
default), cifar10, cifar100, synthetic."""

BUILTIN = {
    "fashion_mnist": "repb_ray.tasks.fashion_mnist:FashionMNIST",
    "cifar10": "repb_ray.tasks.cifar:CIFAR10",
    "cifar100": "repb_ray.tasks.cifar:CIFAR100",
    "synthetic": "repb_ray.tasks.synthetic:Synthetic",
}
